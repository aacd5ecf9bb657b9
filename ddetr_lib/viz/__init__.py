"""Pictures of what the models do: one home for every figure of the course.

Each function draws with matplotlib on the ``Axes`` it is given (or makes a figure and
returns it). Figures of attention take the records of ``ddetr_lib.models.capture_attention``
(DETR) and ``capture_deformable`` (Deformable DETR); ``run_with_capture`` runs a model on a
few images and returns its outputs with that record. Positions are normalised by each
image's *unpadded* size, so a figure is right for any image of a padded batch.
"""
# --- images, boxes, forward pass with capture, static figures (h3-viz) ---
from ddetr_lib.viz.images import (box_patch, boxes_to_pixels, class_colour, denormalize, draw_boxes,  # noqa: F401
                                  image_extent, make_synthetic_examples_figure, plot_dataset_examples,
                                  save_prediction_figure, show_image, to_numpy_image)
from ddetr_lib.viz.common import (CapturedRun, confident_queries, model_input, query_scores,  # noqa: F401
                                  run_with_capture)
from ddetr_lib.viz.curves import plot_learning_curves, read_log  # noqa: F401
from ddetr_lib.viz.matching import matching_costs, plot_matching  # noqa: F401
from ddetr_lib.viz.detr_attention import plot_detr_decoder_attention, plot_detr_encoder_attention  # noqa: F401
from ddetr_lib.viz.deformable import (initial_offsets, initial_sampling_locations,  # noqa: F401
                                     plot_initial_vs_trained, plot_refinement, plot_sampling_density,
                                     plot_two_stage, refinement_track, sampling_density, two_stage_proposals)
# --- end h3-viz ---
# --- sampling points (Fig. 6) and the interactive explorer (h4-explorer) ---
from ddetr_lib.viz.sampling import (QueryPoints, draw_query_sampling, encoder_cell_box, encoder_query_at,  # noqa: F401
                                    encoder_query_cell, encoder_query_index, padded_to_image_pixels,
                                    plot_query_sampling, query_points, reference_points_to_pixels,
                                    sampling_locations_to_pixels, to_level_coords, valid_level_sizes)
from ddetr_lib.viz.explorer import SamplingExplorer, explore_sampling  # noqa: F401
# --- end h4-explorer ---
