"""dlcv: image generation and domain adaptation from a Deep Learning for Computer Vision course, as software."""

__version__ = "0.1.0"
