"""What every stage shares and that imports no torch: defaults and choices, progress bars."""
