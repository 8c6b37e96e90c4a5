// `asl data`: dataset builders (today: Fashion-MNIST mosaics in COCO format).
#include <chrono>
#include <iostream>
#include <memory>
#include <set>
#include <string>

#include "asl/data/mosaic.h"
#include "commands.h"

namespace asl::cli {

namespace {

struct FashionMosaicParams {
  std::string out;
  int64_t train = 2000;
  int64_t val = 500;
  uint64_t seed = 0;
  int64_t cell = 28;
  int64_t grid = 2;
  int64_t max_items = 4;
  std::string source = "/usr/share/datasets/fashion-mnist";
};

int run_fashion_mosaic(const FashionMosaicParams& p) {
  asl::data::MosaicOptions o;
  o.source_dir = p.source;
  o.train = p.train;
  o.val = p.val;
  o.seed = p.seed;
  o.cell = p.cell;
  o.grid = p.grid;
  o.max_items = p.max_items;
  const auto start = std::chrono::steady_clock::now();
  const asl::data::MosaicSummary s = asl::data::build_fashion_mosaic(p.out, o);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto items = [](const std::vector<asl::data::MosaicImage>& v) {
    size_t n = 0;
    for (const auto& m : v) n += m.items.size();
    return n;
  };
  std::cout << "wrote " << s.train.size() << " train images (" << items(s.train) << " items) and " << s.val.size()
            << " val images (" << items(s.val) << " items), " << p.grid * p.cell << "x" << p.grid * p.cell
            << " px, to " << p.out << " in " << seconds << " s\n"
            << "  " << p.out << "/annotations/instances_{train,val}2014.json, " << p.out << "/{train,val}2014/*.png\n";
  return 0;
}

}  // namespace

void register_data(CLI::App& app, Runner& run) {
  CLI::App* data = app.add_subcommand("data", "Build datasets");
  data->require_subcommand(1);
  auto fm = std::make_shared<FashionMosaicParams>();
  CLI::App* cmd = data->add_subcommand(
      "fashion-mosaic",
      "A multi-label dataset from Debian's dataset-fashion-mnist: each image a grid of Fashion-MNIST items "
      "(1-4 distinct classes of 10, other cells black), written in COCO's layout (annotations/instances_*.json, "
      "train2014/, val2014/). Same options and seed: byte-identical files.");
  cmd->add_option("out", fm->out, "Output folder")->required();
  cmd->add_option("--train", fm->train, "Train images (items from the official train split)")->capture_default_str();
  cmd->add_option("--val", fm->val, "Val images (items from the official test split)")->capture_default_str();
  cmd->add_option("--seed", fm->seed, "Random seed")->capture_default_str();
  cmd->add_option("--cell", fm->cell, "Cell side in pixels (items resized bilinearly from 28)")->capture_default_str();
  cmd->add_option("--grid", fm->grid, "Cells per side")->check(CLI::IsMember(std::set<int64_t>{2, 3}))->capture_default_str();
  cmd->add_option("--max-items,--max_items", fm->max_items, "Most items (distinct classes) per image")
      ->check(CLI::Range(1, 9))
      ->capture_default_str();
  cmd->add_option("--source", fm->source, "Folder of the Fashion-MNIST idx .gz files")->capture_default_str();
  cmd->callback([fm, &run] { run = [fm] { return run_fashion_mosaic(*fm); }; });
}

}  // namespace asl::cli
