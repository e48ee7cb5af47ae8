"""The tiny model configuration of the tests (the tests folder is on sys.path under pytest)."""

#: A complete model small enough to build, train and run on a CPU in seconds.
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 2048}  # fmt: skip
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8}  # fmt: skip
TINY_PTV3 = {"enc_depths": (1, 1, 1, 1, 1), "enc_channels": (8, 8, 16, 16, 32), "enc_num_head": (1, 1, 2, 2, 4),
             "enc_patch_size": (64,) * 5}  # fmt: skip
TINY_TOKENS = 16
