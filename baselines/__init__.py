"""Baseline editors behind the same protocol as InstructPix2Pix: SDEdit, Text2Live-style, post-edit."""
