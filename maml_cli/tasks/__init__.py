"""Task families (config group `task/`): each samples Episodes on its device."""
