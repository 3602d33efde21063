"""What everything else stands on: errors, atomic files, registries, the config schema, seeds, the
contracts of every entry, the threat model and the config's sections. Imports nothing else of the project."""
