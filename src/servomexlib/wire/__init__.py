"""The pure wire layer: bytes and numbers in, values out. No I/O, no clock, no logging.

Private package: the public entry points are re-exported by :mod:`servomexlib` and
:mod:`servomexlib.testing`.
"""
