"""Where the played program goes besides the network: readers of the program ring that write
it to a file (`--record`) or to stdout (`--stdout`), each on a thread of its own (base)."""
