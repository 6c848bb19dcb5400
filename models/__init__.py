"""SketchWatch ML package: input formats, rasterizer, autoencoder, training, scoring and artifacts.

Nothing is imported here so that ``import models.formats`` stays light (no TensorFlow).
"""
