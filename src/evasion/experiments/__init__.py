"""Reproductions of the reference papers (`evasion reproduce NAME`)."""
