"""Neural-network building blocks: radial bases, irreps linear maps and gates, SO(2) convolutions."""
