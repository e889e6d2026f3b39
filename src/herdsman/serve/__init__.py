"""Process-level wiring: build the serving context, bind sockets, run until told to stop."""
