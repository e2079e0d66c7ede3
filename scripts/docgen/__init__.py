"""Documents generated from the code they describe, so they cannot drift from it.

debian/rules runs ``python3 -m scripts.docgen OUTDIR`` at build time: the man pages
come from the argument parsers, the config schema (with each key's attribute
docstring), the introspection XML and the bus policy; the example config from the
schema; the bash completion from banguictl's parser. Only the standard library and
the project's own modules are used.
"""
