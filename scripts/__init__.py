"""Build and demo helpers; a package so that tests import them by one module name."""
