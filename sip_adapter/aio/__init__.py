"""The asyncio shell around the protocol core: transports, the server, the store gateway
and the command-line client. The only code that touches sockets or the loop's clock."""
