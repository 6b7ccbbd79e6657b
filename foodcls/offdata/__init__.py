"""Building training files from Open Food Facts exports: read, label, clean, de-duplicate, split."""
