"""What a node is, read and acted on through one seam per source."""
