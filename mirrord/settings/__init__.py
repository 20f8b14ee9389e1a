"""What the CLI hands the layer (and the native relay): the settings contract and the
decision modules built from it. Standard library only: imported inside the user's app."""
