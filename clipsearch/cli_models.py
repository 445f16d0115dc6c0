"""`clipsearch models ...` (filled in by the model-store work)."""

import click


@click.group()
def models() -> None:
    """Manage CLIP model files (offline-first)."""
