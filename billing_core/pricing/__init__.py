"""What things cost: the price catalog (a validated data file), quotes for usage items, credit packages."""
