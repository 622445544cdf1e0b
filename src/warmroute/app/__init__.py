"""The composition layer: the `warmroute` commands, process launching, app assembly and
lifespans. Everything else is imported from here; nothing imports this package."""
