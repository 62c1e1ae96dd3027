"""Image builders: the built-in tiny image and NoCloud seeds."""
