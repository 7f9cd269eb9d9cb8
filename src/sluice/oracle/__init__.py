"""The price oracle's adapters: reading a source's JSON (over HTTP or from a file) into an
observation, or into the rejection that says why it could not be read."""
