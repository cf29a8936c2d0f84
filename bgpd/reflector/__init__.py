"""Who peers with whom (mesh / RR / BGPPeer selectors) and RFC 4456 reflection."""
