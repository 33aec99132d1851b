// model/plot.cpp — see plot.h. A tiny raster plotter: filled rectangles, anti-aliased thick line
// segments and dots (coverage from the distance to the shape, blended over what is there), and
// a 5x7 bitmap font drawn at an integer scale.
#include "model/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "runtime/error.h"

namespace rpp {

namespace {

struct Rgb {
  uint8_t r, g, b;
};

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kFrame{110, 110, 110};
constexpr Rgb kGrid{228, 228, 228};
constexpr Rgb kText{50, 50, 50};
constexpr Rgb kTitle{20, 20, 20};
constexpr Rgb kTrain{31, 119, 180};  // blue
constexpr Rgb kVal{255, 127, 14};    // orange
constexpr Rgb kDice{44, 160, 44};    // green
constexpr Rgb kBest{214, 39, 40};    // red

// ---- 5x7 font ----
// Each glyph is 7 rows of 5 columns, '#' = ink, plus two descender rows for the letters that
// need them (drawn into the line gap; layout counts 7 rows). Lower-case letters, digits, the
// punctuation the labels and numbers need, and 'D'. Anything else is drawn as a hollow box.
struct Glyph {
  char ch;
  const char* rows;                // 35 characters, row by row; row 6 is the baseline
  const char* descender = nullptr;  // 10 characters: two rows below the baseline (g, j, p, q, y, ',')
};
// clang-format off
constexpr Glyph kGlyphs[] = {
  {'0', ".###." "#...#" "#..##" "#.#.#" "##..#" "#...#" ".###."},
  {'1', "..#.." ".##.." "..#.." "..#.." "..#.." "..#.." ".###."},
  {'2', ".###." "#...#" "....#" "...#." "..#.." ".#..." "#####"},
  {'3', "#####" "...#." "..#.." "...#." "....#" "#...#" ".###."},
  {'4', "...#." "..##." ".#.#." "#..#." "#####" "...#." "...#."},
  {'5', "#####" "#...." "####." "....#" "....#" "#...#" ".###."},
  {'6', "..##." ".#..." "#...." "####." "#...#" "#...#" ".###."},
  {'7', "#####" "....#" "...#." "..#.." ".#..." ".#..." ".#..."},
  {'8', ".###." "#...#" "#...#" ".###." "#...#" "#...#" ".###."},
  {'9', ".###." "#...#" "#...#" ".####" "....#" "...#." ".##.."},
  {'.', "....." "....." "....." "....." "....." ".##.." ".##.."},
  {',', "....." "....." "....." "....." "....." ".##.." ".##..", "..#.." ".#..."},
  {'-', "....." "....." "....." ".###." "....." "....." "....."},
  {'+', "....." "..#.." "..#.." "#####" "..#.." "..#.." "....."},
  {':', "....." ".##.." ".##.." "....." ".##.." ".##.." "....."},
  {'(', "...#." "..#.." ".#..." ".#..." ".#..." "..#.." "...#."},
  {')', ".#..." "..#.." "...#." "...#." "...#." "..#.." ".#..."},
  {'/', "....." "....#" "...#." "..#.." ".#..." "#...." "....."},
  {'=', "....." "....." "#####" "....." "#####" "....." "....."},
  {'D', "###.." "#..#." "#...#" "#...#" "#...#" "#..#." "###.."},
  {'a', "....." "....." ".###." "....#" ".####" "#...#" ".####"},
  {'b', "#...." "#...." "#.##." "##..#" "#...#" "#...#" "####."},
  {'c', "....." "....." ".###." "#...." "#...." "#...#" ".###."},
  {'d', "....#" "....#" ".##.#" "#..##" "#...#" "#...#" ".####"},
  {'e', "....." "....." ".###." "#...#" "#####" "#...." ".###."},
  {'f', "..##." ".#..#" ".#..." "###.." ".#..." ".#..." ".#..."},
  {'g', "....." "....." ".####" "#...#" "#...#" "#...#" ".####", "....#" ".###."},
  {'h', "#...." "#...." "#.##." "##..#" "#...#" "#...#" "#...#"},
  {'i', "..#.." "....." ".##.." "..#.." "..#.." "..#.." ".###."},
  {'j', "...#." "....." "..##." "...#." "...#." "...#." "...#.", "#..#." ".##.."},
  {'k', "#...." "#...." "#..#." "#.#.." "##..." "#.#.." "#..#."},
  {'l', ".##.." "..#.." "..#.." "..#.." "..#.." "..#.." ".###."},
  {'m', "....." "....." "##.#." "#.#.#" "#.#.#" "#...#" "#...#"},
  {'n', "....." "....." "#.##." "##..#" "#...#" "#...#" "#...#"},
  {'o', "....." "....." ".###." "#...#" "#...#" "#...#" ".###."},
  {'p', "....." "....." "####." "#...#" "#...#" "#...#" "####.", "#...." "#...."},
  {'q', "....." "....." ".####" "#...#" "#...#" "#...#" ".####", "....#" "....#"},
  {'r', "....." "....." "#.##." "##..#" "#...." "#...." "#...."},
  {'s', "....." "....." ".####" "#...." ".###." "....#" "####."},
  {'t', ".#..." ".#..." "###.." ".#..." ".#..." ".#..#" "..##."},
  {'u', "....." "....." "#...#" "#...#" "#...#" "#..##" ".##.#"},
  {'v', "....." "....." "#...#" "#...#" "#...#" ".#.#." "..#.."},
  {'w', "....." "....." "#...#" "#...#" "#.#.#" "#.#.#" ".#.#."},
  {'x', "....." "....." "#...#" ".#.#." "..#.." ".#.#." "#...#"},
  {'y', "....." "....." "#...#" "#...#" "#...#" "#...#" ".####", "....#" ".###."},
  {'z', "....." "....." "#####" "...#." "..#.." ".#..." "#####"},
};
// clang-format on
constexpr const char* kUnknownGlyph = "#####" "#...#" "#...#" "#...#" "#...#" "#...#" "#####";

const Glyph* find_glyph(char ch) {
  static const Glyph unknown{'?', kUnknownGlyph};
  if (ch == ' ') return nullptr;
  for (const Glyph& g : kGlyphs)
    if (g.ch == ch) return &g;
  return &unknown;
}

// ---- canvas ----

struct Rect {
  int x0, y0, x1, y1;  // pixels [x0, x1) x [y0, y1)
};

class Canvas {
 public:
  Canvas(int w, int h) {
    img_.w = w;
    img_.h = h;
    img_.c = 3;
    img_.px.assign(size_t(w) * size_t(h) * 3, 255);
  }
  int w() const { return img_.w; }
  int h() const { return img_.h; }
  Image take() { return std::move(img_); }

  Rgb get(int x, int y) const {
    if (x < 0 || y < 0 || x >= img_.w || y >= img_.h) return kWhite;
    const uint8_t* p = &img_.px[(size_t(y) * size_t(img_.w) + size_t(x)) * 3];
    return {p[0], p[1], p[2]};
  }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= img_.w || y >= img_.h) return;
    uint8_t* p = &img_.px[(size_t(y) * size_t(img_.w) + size_t(x)) * 3];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  // Blends c over the pixel with coverage a in [0, 1]; a = 1 writes c exactly.
  void blend(int x, int y, Rgb c, double a) {
    if (x < 0 || y < 0 || x >= img_.w || y >= img_.h || !(a > 0)) return;
    if (a >= 1) return set(x, y, c);
    uint8_t* p = &img_.px[(size_t(y) * size_t(img_.w) + size_t(x)) * 3];
    const uint8_t cc[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = uint8_t(std::lround(double(p[k]) * (1 - a) + double(cc[k]) * a));
  }
  void fill(Rect r, Rgb c) {
    for (int y = std::max(0, r.y0); y < std::min(img_.h, r.y1); ++y)
      for (int x = std::max(0, r.x0); x < std::min(img_.w, r.x1); ++x) set(x, y, c);
  }
  // 1-pixel outline just outside r.
  void frame(Rect r, Rgb c) {
    fill({r.x0 - 1, r.y0 - 1, r.x1 + 1, r.y0}, c);
    fill({r.x0 - 1, r.y1, r.x1 + 1, r.y1 + 1}, c);
    fill({r.x0 - 1, r.y0, r.x0, r.y1}, c);
    fill({r.x1, r.y0, r.x1 + 1, r.y1}, c);
  }

 private:
  Image img_;
};

// ---- text ----

int text_width(const std::string& s, int scale) { return s.empty() ? 0 : int(s.size()) * 6 * scale - scale; }
int text_height(int scale) { return 7 * scale; }

// (x, y): top-left corner of the first glyph's cell.
void draw_text(Canvas& cv, int x, int y, const std::string& s, int scale, Rgb c) {
  for (char ch : s) {
    if (const Glyph* g = find_glyph(ch))
      for (int gy = 0; gy < (g->descender ? 9 : 7); ++gy)
        for (int gx = 0; gx < 5; ++gx)
          if ((gy < 7 ? g->rows[gy * 5 + gx] : g->descender[(gy - 7) * 5 + gx]) == '#')
            cv.fill({x + gx * scale, y + gy * scale, x + (gx + 1) * scale, y + (gy + 1) * scale}, c);
    x += 6 * scale;
  }
}

// ---- anti-aliased shapes, clipped to a rectangle ----

int clamp_px(double v) { return int(std::max(-1.0e6, std::min(1.0e6, std::floor(v)))); }

// Thick segment of half-width r: coverage = clamp(r + 0.5 - distance, 0, 1) per pixel centre.
void draw_segment(Canvas& cv, const Rect& clip, double ax, double ay, double bx, double by, double r, Rgb c) {
  const int x0 = std::max(clip.x0, clamp_px(std::min(ax, bx) - r - 1));
  const int x1 = std::min(clip.x1 - 1, clamp_px(std::max(ax, bx) + r + 1));
  const int y0 = std::max(clip.y0, clamp_px(std::min(ay, by) - r - 1));
  const int y1 = std::min(clip.y1 - 1, clamp_px(std::max(ay, by) + r + 1));
  const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const double px = x + 0.5, py = y + 0.5;
      double t = len2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0;
      t = std::max(0.0, std::min(1.0, t));
      const double ex = ax + t * dx - px, ey = ay + t * dy - py;
      const double cov = r + 0.5 - std::sqrt(ex * ex + ey * ey);
      if (cov > 0) cv.blend(x, y, c, std::min(1.0, cov));
    }
}

void draw_dot(Canvas& cv, const Rect& clip, double cx, double cy, double r, Rgb c) {
  draw_segment(cv, clip, cx, cy, cx, cy, r, c);
}

// Small upward triangle with its tip at (cx, top): marks values above the axis.
void draw_up_triangle(Canvas& cv, int cx, int top, int half, Rgb c) {
  for (int row = 0; row < half + 1; ++row)
    for (int x = cx - row; x <= cx + row; ++x) cv.set(x, top + row, c);
}

// ---- axes ----

struct Axis {
  double lo = 0, hi = 1;     // data range shown
  double p0 = 0, p1 = 1;     // pixel coordinates of lo and hi
  double map(double v) const { return p0 + (v - lo) / (hi - lo) * (p1 - p0); }
};

struct Tick {
  double v;
  std::string label;
};

// A "nice" step (1, 2, 2.5 or 5 times a power of ten) near span / target.
double nice_step(double span, int target) {
  const double raw = span / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double m = raw / mag;
  const double f = m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10;
  return f * mag;
}

std::string number_label(double v, double step) {
  char buf[48];
  if (std::fabs(v) < step * 1e-6) v = 0;  // avoid "-0"
  const double a = std::max(std::fabs(v), step);
  if (a >= 1e5 || step < 1e-4) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
  } else {
    int decimals = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
    const double mant = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
    if (std::fabs(mant - 2.5) < 1e-6) ++decimals;
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  }
  return buf;
}

std::vector<Tick> value_ticks(double lo, double hi, double step) {
  std::vector<Tick> t;
  const double first = std::ceil(lo / step - 1e-9) * step;
  for (int i = 0; i < 64; ++i) {
    const double v = first + double(i) * step;
    if (v > hi + step * 1e-9) break;
    t.push_back({v, number_label(v, step)});
  }
  return t;
}

// Loss range: see plot.h. Returns false when there is no finite value.
bool loss_range(const std::vector<double>& a, const std::vector<double>& b, double* lo, double* hi) {
  std::vector<double> v;
  for (double x : a)
    if (std::isfinite(x)) v.push_back(x);
  for (double x : b)
    if (std::isfinite(x)) v.push_back(x);
  if (v.empty()) return false;
  std::sort(v.begin(), v.end());
  size_t keep = v.size();  // values [0, keep) are shown in full
  const size_t top_tenth = std::max<size_t>(1, v.size() / 10);
  for (size_t k = v.size() - 1; k >= 1 && k + top_tenth >= v.size(); --k)
    if (v[k - 1] > 0 && v[k] > 3 * v[k - 1]) keep = k;  // v[k] and everything above are spikes
  const double mn = v.front(), mx = v[keep - 1];
  *lo = (mn >= 0 && mn < 0.5 * mx) ? 0.0 : mn;
  *hi = mx;
  if (!(*hi > *lo)) {  // one distinct value
    const double pad = std::fabs(*hi) > 0 ? 0.5 * std::fabs(*hi) : 0.5;
    *lo = (mn >= 0 && mn - pad < 0) ? 0.0 : mn - pad;
    *hi = mx + pad;
  }
  return true;
}

struct Layout {
  Rect plot;     // the data area
  int ts, tt;    // tick/legend and title font scales
};

// Frame, grid, ticks and labels of one panel.
void draw_axes(Canvas& cv, const Rect& panel, const Layout& L, const Axis& xa, const std::vector<Tick>& xt,
               const Axis& ya, const std::vector<Tick>& yt, const std::string& title) {
  const Rect& p = L.plot;
  for (const Tick& t : yt) {
    const int y = int(std::floor(ya.map(t.v)));
    cv.fill({p.x0, y, p.x1, y + 1}, kGrid);
  }
  for (const Tick& t : xt) {
    const int x = int(std::floor(xa.map(t.v)));
    cv.fill({x, p.y0, x + 1, p.y1}, kGrid);
  }
  cv.frame(p, kFrame);
  const int tick_len = 2 + 2 * L.ts;
  for (const Tick& t : yt) {
    const int y = int(std::floor(ya.map(t.v)));
    cv.fill({p.x0 - 1 - tick_len, y, p.x0 - 1, y + 1}, kFrame);
    draw_text(cv, p.x0 - 1 - tick_len - 3 - text_width(t.label, L.ts), y - text_height(L.ts) / 2, t.label, L.ts, kText);
  }
  for (const Tick& t : xt) {
    const int x = int(std::floor(xa.map(t.v)));
    cv.fill({x, p.y1 + 1, x + 1, p.y1 + 1 + tick_len}, kFrame);
    draw_text(cv, x - text_width(t.label, L.ts) / 2, p.y1 + 1 + tick_len + 3, t.label, L.ts, kText);
  }
  const int label_y = p.y1 + 1 + tick_len + 3 + text_height(L.ts) + 3 * L.ts;
  draw_text(cv, (p.x0 + p.x1) / 2 - text_width("epoch", L.ts) / 2, label_y, "epoch", L.ts, kText);
  draw_text(cv, (p.x0 + p.x1) / 2 - text_width(title, L.tt) / 2, panel.y0 + 4 * L.ts + 2, title, L.tt, kTitle);
}

// Legend box in a corner of the plot area: entries of (colour, text, is_dot).
struct LegendEntry {
  Rgb colour;
  std::string text;
  bool dot;
};
// Corners in order of preference: 0 top-right, 1 bottom-left, 2 top-left, 3 bottom-right. The
// legend goes to the first corner among those covering the fewest already-drawn data pixels.
// Returns false (drawing nothing) when the legend does not fit in the plot area.
bool draw_legend(Canvas& cv, const Layout& L, const std::vector<LegendEntry>& entries, const int (&corners)[4]) {
  if (entries.empty()) return true;
  const int ts = L.ts, line_h = text_height(ts) + 4 * ts, sample_w = 14 * ts;
  int text_w = 0;
  for (const LegendEntry& e : entries) text_w = std::max(text_w, text_width(e.text, ts));
  const int w = 4 * ts + sample_w + 4 * ts + text_w + 5 * ts;
  const int h = int(entries.size()) * line_h + 3 * ts;
  if (L.plot.x1 - L.plot.x0 < w + 6 * ts + 2 || L.plot.y1 - L.plot.y0 < h + 6 * ts + 2) return false;
  Rect box{0, 0, 0, 0};
  long best_ink = -1;
  for (int corner : corners) {
    const bool right = corner == 0 || corner == 3, top = corner == 0 || corner == 2;
    const int x0 = right ? L.plot.x1 - 6 * ts - w : L.plot.x0 + 6 * ts;
    const int y0 = top ? L.plot.y0 + 6 * ts : L.plot.y1 - 6 * ts - h;
    long ink = 0;
    for (int y = y0 - 2; y < y0 + h + 2; ++y)
      for (int x = x0 - 2; x < x0 + w + 2; ++x) {
        const Rgb c = cv.get(x, y);
        const bool background = (c.r == kWhite.r && c.g == kWhite.g && c.b == kWhite.b) ||
                                (c.r == kGrid.r && c.g == kGrid.g && c.b == kGrid.b);
        ink += background ? 0 : 1;
      }
    if (best_ink < 0 || ink < best_ink) best_ink = ink, box = Rect{x0, y0, x0 + w, y0 + h};
  }
  const int x0 = box.x0, y0 = box.y0;
  cv.fill(box, kWhite);
  cv.frame(box, kGrid);
  for (size_t i = 0; i < entries.size(); ++i) {
    const LegendEntry& e = entries[i];
    const int ty = y0 + 2 * ts + int(i) * line_h + 2 * ts;
    const double cy = ty + 0.5 * text_height(ts);
    const double sx0 = x0 + 4 * ts, sx1 = sx0 + sample_w;
    if (e.dot)
      draw_dot(cv, box, 0.5 * (sx0 + sx1), cy, 1.2 + 1.2 * ts, e.colour);
    else
      draw_segment(cv, box, sx0, cy, sx1, cy, 0.6 + 0.4 * ts, e.colour);
    draw_text(cv, int(sx1) + 4 * ts, ty, e.text, ts, kText);
  }
  return true;
}

// One series: segments between consecutive finite points, dots when few epochs or isolated,
// triangles on the top edge for points above the axis.
void draw_series(Canvas& cv, const Layout& L, const Axis& xa, const Axis& ya, const std::vector<double>& v, int n,
                 Rgb c) {
  const double r = 0.6 + 0.4 * L.ts;
  const bool dots = n <= 40;
  auto finite = [&](size_t i) { return i < v.size() && std::isfinite(v[i]); };
  for (size_t i = 0; i < v.size(); ++i) {
    if (!finite(i)) continue;
    const double x = xa.map(double(i + 1)), y = ya.map(v[i]);
    if (finite(i + 1)) draw_segment(cv, L.plot, x, y, xa.map(double(i + 2)), ya.map(v[i + 1]), r, c);
    const bool isolated = !(i > 0 && finite(i - 1)) && !finite(i + 1);
    if (dots || isolated) draw_dot(cv, L.plot, x, y, r + 1.0 * L.ts, c);
  }
  for (size_t i = 0; i < v.size(); ++i)
    if (finite(i) && v[i] > ya.hi) draw_up_triangle(cv, int(std::floor(xa.map(double(i + 1)))), L.plot.y0, 3 * L.ts, c);
}

std::vector<Tick> epoch_ticks(const Axis& xa, int n, int plot_w, int ts) {
  std::vector<Tick> t;
  if (n <= 0) return t;
  // Room for labels: about one per (widest label + gap) pixels.
  const int label_w = text_width(std::to_string(n), ts) + 10 * ts;
  const int max_ticks = std::max(2, plot_w / std::max(1, label_w));
  double step = std::max(1.0, nice_step(double(std::max(1, n - 1)), std::min(max_ticks, 8)));
  if (step == 2.5) step = 2;  // integer epochs
  step = std::round(step);
  const double first = std::ceil(xa.lo / step) * step;
  if (step > 1 && first - 1 >= 0.5 * step) t.push_back({1, "1"});
  for (double v = first; v <= xa.hi + 1e-9; v += step)
    if (v >= 1 && v <= double(n)) t.push_back({v, std::to_string(int64_t(v))});
  return t;
}

std::string fixed3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

}  // namespace

Image draw_training_curves(const std::vector<double>& train_loss, const std::vector<double>& val_loss,
                           const std::vector<double>& val_dice, int width, int height) {
  if (width < 160 || height < 100)
    fail("draw_training_curves: image size ", width, "x", height, " is below the minimum 160x100");
  if (width > 16384 || height > 16384) fail("draw_training_curves: image size ", width, "x", height, " is too large");
  Canvas cv(width, height);
  const int n = int(std::max({train_loss.size(), val_loss.size(), val_dice.size()}));

  Layout L{};
  L.ts = std::max(1, std::min(width / 2, height) / 200);  // 1 below 400 px, 2 at 800x400
  L.tt = L.ts + (height >= 300 ? 1 : 0);
  const int half = width / 2;

  // Axis ranges.
  Axis xa;
  if (n >= 2) xa.lo = 1, xa.hi = n;
  else if (n == 1) xa.lo = 0, xa.hi = 2;
  else xa.lo = 1, xa.hi = 10;
  double llo = 0, lhi = 1;
  const bool have_loss = loss_range(train_loss, val_loss, &llo, &lhi);
  const double lstep = nice_step(lhi - llo, 5);
  Axis la;
  la.lo = std::floor(llo / lstep + 1e-9) * lstep;
  la.hi = std::ceil(lhi / lstep - 1e-9) * lstep;
  if (!(la.hi > la.lo)) la.hi = la.lo + lstep;
  const std::vector<Tick> lticks = value_ticks(la.lo, la.hi, lstep);
  Axis da;
  da.lo = 0, da.hi = 1;
  const std::vector<Tick> dticks = value_ticks(0, 1, 0.2);

  for (int panel_i = 0; panel_i < 2; ++panel_i) {
    const Rect panel{panel_i * half, 0, panel_i == 0 ? half : width, height};
    const std::vector<Tick>& yt = panel_i == 0 ? lticks : dticks;
    int label_w = 0;
    for (const Tick& t : yt) label_w = std::max(label_w, text_width(t.label, L.ts));
    const int tick_len = 2 + 2 * L.ts;
    L.plot.x0 = panel.x0 + 6 * L.ts + label_w + 3 + tick_len + 1;
    L.plot.x1 = panel.x1 - 8 * L.ts - 4;
    L.plot.y0 = panel.y0 + 4 * L.ts + 2 + text_height(L.tt) + 6 * L.ts;
    L.plot.y1 = panel.y1 - (1 + tick_len + 3 + text_height(L.ts) + 3 * L.ts + text_height(L.ts) + 4 * L.ts);
    if (L.plot.x1 - L.plot.x0 < 40 || L.plot.y1 - L.plot.y0 < 30)
      fail("draw_training_curves: ", width, "x", height, " leaves no room for the plots");
    // Data are inset from the frame so that end dots are not cut in half.
    const double inset = 4.0 * L.ts + 2;
    Axis x = xa;
    x.p0 = L.plot.x0 + inset;
    x.p1 = L.plot.x1 - inset;
    Axis y = panel_i == 0 ? la : da;
    y.p0 = L.plot.y1 - inset;
    y.p1 = L.plot.y0 + inset;
    const std::vector<Tick> xt = epoch_ticks(x, n, L.plot.x1 - L.plot.x0, L.ts);
    draw_axes(cv, panel, L, x, xt, y, yt, panel_i == 0 ? "loss" : "validation Dice");

    if (n == 0) {
      const std::string msg = "no data";
      draw_text(cv, (L.plot.x0 + L.plot.x1 - text_width(msg, L.tt)) / 2, (L.plot.y0 + L.plot.y1 - text_height(L.tt)) / 2,
                msg, L.tt, kText);
      continue;
    }
    if (panel_i == 0) {
      if (!have_loss) {
        const std::string msg = "no finite loss";
        draw_text(cv, (L.plot.x0 + L.plot.x1 - text_width(msg, L.ts)) / 2, (L.plot.y0 + L.plot.y1) / 2, msg, L.ts, kText);
      }
      draw_series(cv, L, x, y, val_loss, n, kVal);
      draw_series(cv, L, x, y, train_loss, n, kTrain);
      std::vector<LegendEntry> legend;
      if (!train_loss.empty()) legend.push_back({kTrain, "train", false});
      if (!val_loss.empty()) legend.push_back({kVal, "val", false});
      draw_legend(cv, L, legend, {0, 1, 2, 3});
    } else {
      draw_series(cv, L, x, y, val_dice, n, kDice);
      int best = -1;
      for (size_t i = 0; i < val_dice.size(); ++i)
        if (std::isfinite(val_dice[i]) && (best < 0 || val_dice[i] > val_dice[size_t(best)])) best = int(i);
      std::vector<LegendEntry> legend;
      if (!val_dice.empty()) legend.push_back({kDice, "val Dice", false});
      if (best >= 0) {
        const double v = std::min(1.0, std::max(0.0, val_dice[size_t(best)]));
        draw_dot(cv, L.plot, x.map(double(best + 1)), y.map(v), 2.0 + 2.0 * L.ts, kBest);
        legend.push_back({kBest, "", true});
      }
      // The best entry in the longest form that fits.
      const std::string score = best >= 0 ? "best " + fixed3(val_dice[size_t(best)]) : "";
      const std::string ep = std::to_string(best + 1);
      for (const std::string& text : {score + " (epoch " + ep + ")", score + " (" + ep + ")", score, std::string()}) {
        if (best >= 0) legend.back().text = text;
        if (text.empty() && best >= 0) legend.pop_back();
        if (draw_legend(cv, L, legend, {3, 2, 1, 0})) break;
      }
    }
  }
  return cv.take();
}

void save_training_curves(const std::string& path, const std::vector<double>& train_loss,
                          const std::vector<double>& val_loss, const std::vector<double>& val_dice, int width,
                          int height) {
  save_png(path, draw_training_curves(train_loss, val_loss, val_dice, width, height));
}

}  // namespace rpp
