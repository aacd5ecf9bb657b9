"""Pictures of what the models do (filled by the visualization issue)."""

# --- sampling points (Fig. 6) and the interactive explorer (h4) ---
from ddetr_lib.viz.sampling import (QueryPoints, draw_query_sampling, encoder_cell_box, encoder_query_at,  # noqa: F401
                                    encoder_query_cell, encoder_query_index, padded_to_image_pixels,
                                    plot_query_sampling, query_points, reference_points_to_pixels,
                                    sampling_locations_to_pixels, to_level_pixels, valid_level_sizes)
# --- end h4 ---
