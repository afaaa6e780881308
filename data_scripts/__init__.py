"""Instructor / student tools that prepare datasets for labkit: ``python -m data_scripts --help``.

They download (resumable, checksummed) or import dataset archives, decode them once and
write the compact caches that :mod:`labkit.data` reads. ``labkit`` never imports this package.
"""
