"""The networks: layers, the Isensee-2017 encoder-decoder and position regressor, initialisation."""
