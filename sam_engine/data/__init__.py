"""Corpora, formats and tables: synthetic scenes, COCO / image-folder / SA-1B I/O, RLE helpers, schemas."""
