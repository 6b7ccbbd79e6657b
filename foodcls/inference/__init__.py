"""Numpy inference from a checkpoint alone: never imports torch, training or experiments."""
