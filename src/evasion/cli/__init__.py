"""The `evasion` command line: thin wrappers that parse, call the library, save and summarise."""
