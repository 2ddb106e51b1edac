"""Vision data and models in plain torch (torchvision does not import beside the CPU torch here)."""
