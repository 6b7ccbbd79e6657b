"""The fixed vocabulary of the task: class names in index order and feature names in column order.

Kept in a module of its own so the quick paths (predict) can use it without loading the config schema.
"""

CLASSES: tuple[str, ...] = ("beverages", "meats", "snacks", "desserts")
FEATURES: tuple[str, ...] = ("protein", "carbs", "fat", "additives")
NUTRIENTS: tuple[str, ...] = ("protein", "carbs", "fat")
