"""Building blocks shared by the methods: losses, feature alignment, meta-weight networks, hard buffer."""
