"""Small helpers below every other layer: atomic writes and output-folder locks (:mod:`.io_utils`)."""
