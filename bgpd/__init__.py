"""routemesh: the BGP daemon and the core shared by every component."""
