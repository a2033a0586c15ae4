"""idhub: single sign-on, directory sync and unified authorization for enterprise systems."""

__version__ = "0.1.0"
