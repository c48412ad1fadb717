"""The station on the network: encode once (encoders, ogg) into packet rings (packets), fan out
to listeners (broadcast) over WebSocket and HTTP (webapp, protocol) and to Icecast (icecast);
one status snapshot for all (status); the whole side as one service on one loop (service)."""
