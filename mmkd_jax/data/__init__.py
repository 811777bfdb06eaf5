"""Data: TFDS sources (array_record, no TensorFlow), augmentation, pipeline, teacher cache."""
