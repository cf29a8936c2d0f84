"""The BGP protocol: wire codec, session FSM, asyncio transport, RIB, best path."""
