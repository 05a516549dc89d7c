"""Command line: thin (parse, call, print). Nothing imports ``iotid.cli``."""
