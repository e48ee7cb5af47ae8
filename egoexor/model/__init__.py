"""Model components: encoders, point transformer, fusion and the vision-language model."""
