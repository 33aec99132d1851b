// model/plot.h — the training-curves image (curves.png of a run folder).
//
// Two panels side by side on a white background, each with a frame, light grid, tick marks, number
// labels and a title, all text in a built-in 5x7 bitmap font:
//   left,  "loss": training loss (blue) and validation loss (orange) per epoch, with a legend.
//          Linear axis from 0 (from the smallest value instead when that is at least half the
//          largest, so a flat curve far above 0 is not squashed) to the largest value that is not
//          a spike, both rounded out to the tick step. A spike is one of the top 10% of finite values
//          that is more than 3x the next smaller value (and so is every value above it); spikes
//          run off the top of the panel and are marked by a small triangle on its top edge, so a
//          single divergent epoch does not flatten the rest of the curve.
//   right, "validation Dice": validation Dice per epoch (green) on a fixed 0..1 axis; the best
//          epoch (the first maximum) is marked with a red dot and named in the legend.
// Legends go to the corner of the plot that covers the fewest data pixels.
// The x axis is the epoch, 1..n (value i of a vector belongs to epoch i + 1; n is the longest of
// the three vectors, and a shorter vector simply ends early). Non-finite values (NaN, inf) are
// not drawn: the line has a gap there. Each epoch gets a dot when n <= 40, and an isolated
// finite value between gaps always gets one. n = 1 draws single dots; n = 0 draws empty axes
// labelled "no data".
// Deterministic: the same input gives the same pixels. Exercised by tests/test_plot.cpp.
#pragma once
#include <string>
#include <vector>

#include "model/image_io.h"

namespace rpp {

// An RGB image (c = 3) of width x height; rpp::Error if width < 160 or height < 100.
Image draw_training_curves(const std::vector<double>& train_loss, const std::vector<double>& val_loss,
                           const std::vector<double>& val_dice, int width = 800, int height = 400);

// draw_training_curves written as a PNG, crash-safely (save_png: temp file, fsync, rename).
void save_training_curves(const std::string& path, const std::vector<double>& train_loss,
                          const std::vector<double>& val_loss, const std::vector<double>& val_dice,
                          int width = 800, int height = 400);

}  // namespace rpp
