"""The built-in launchers, one module each, named for the launcher it registers (`--launcher <module>`)."""
