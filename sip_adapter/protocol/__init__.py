"""The sans-I/O SIP core: bytes in, messages and decisions out. No sockets, no event loop;
time is passed in as `now`."""
