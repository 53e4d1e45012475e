"""Data: procedural CT phantoms, localized OOD artifacts, dataset loaders."""
from .phantoms import Phantom, PhantomCT, ct_phantom, derive_seed, phantom_stream  # noqa: F401
