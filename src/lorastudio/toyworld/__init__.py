"""The toy world: procedural food-photo-like scenes with ground-truth specs and captions."""
