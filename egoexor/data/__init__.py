"""Reading, writing and preparing EgoExOR HDF5 data (no torch model code here)."""
