// segment.cpp: segment an image with a ConvCRF model in plain ONNX Runtime, from C++.
//
// The model is a `plugin`-flavour export (convcrf-export MODEL --flavor plugin -o model.onnx):
// its CRF message passing is two custom ops of domain `trt.plugins`, which ONNX Runtime runs
// once libconvcrf_ort_ops is registered with the session (one call, below). Everything else
// is standard ONNX. No Python at run time.
//
//   convcrf_segment_ort --model model.onnx --ops libconvcrf_ort_ops.so --image in.ppm
//                       [--labels out.pgm] [--threads N]
//
// Input: a binary PPM (P6, 8-bit RGB), fed as the model's `image` input, float32
// [1, 3, H, W], 0..255 (the graph normalises itself). Output: the `labels` output
// [1, H, W] (int64 class indices), printed as a histogram with the class names of the model's
// metadata and, with --labels, written as a binary PGM (P5, one byte per pixel = class index),
// atomically (a temporary file renamed into place). Exit status 0, or 1 with one line on
// stderr naming the problem.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Options {
    std::string model, ops, image, labels;
    int threads = 0;
};

[[noreturn]] void usage(std::string const& problem)
{
    throw std::runtime_error(problem +
                             "\nusage: convcrf_segment_ort --model model.onnx --ops libconvcrf_ort_ops.so "
                             "--image in.ppm [--labels out.pgm] [--threads N]");
}

Options parse(int argc, char** argv)
{
    Options options;
    for (int i = 1; i < argc; ++i) {
        std::string const flag = argv[i];
        if (flag == "-h" || flag == "--help")
            usage("segments a binary PPM with a plugin-flavour ConvCRF model");
        if (i + 1 >= argc)
            usage(flag + " needs a value");
        std::string const value = argv[++i];
        if (flag == "--model")
            options.model = value;
        else if (flag == "--ops")
            options.ops = value;
        else if (flag == "--image")
            options.image = value;
        else if (flag == "--labels")
            options.labels = value;
        else if (flag == "--threads") {
            char* end = nullptr;
            long const threads = std::strtol(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || threads < 0 || threads > 1024)
                usage("--threads must be an integer in 0..1024 (0: every CPU), got " + value);
            options.threads = static_cast<int>(threads);
        } else
            usage("unknown argument " + flag);
    }
    if (options.model.empty() || options.ops.empty() || options.image.empty())
        usage("--model, --ops and --image are required");
    if (!options.labels.empty() && (options.labels == options.image || options.labels == options.model))
        usage("--labels " + options.labels + " is one of the inputs; choose another file");
    return options;
}

// Skips whitespace and '#' comments of a PNM header, then reads an unsigned integer.
long pnmNumber(std::istream& in, std::string const& path)
{
    for (;;) {
        int const c = in.peek();
        if (c == '#')
            in.ignore(1 << 20, '\n');
        else if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            in.get();
        else
            break;
    }
    long value = -1;
    if (!(in >> value) || value < 0)
        throw std::runtime_error(path + " is not a valid binary PPM (P6): bad header");
    return value;
}

// A binary PPM as float32 NCHW [1, 3, H, W], values 0..255.
std::vector<float> readPpm(std::string const& path, int64_t& height, int64_t& width)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path);
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || magic[1] != '6')
        throw std::runtime_error(path + " is not a binary PPM (P6); convert it first, e.g. "
                                        "`python -c \"import cv2; cv2.imwrite('in.ppm', cv2.imread('in.png'))\"`");
    width = pnmNumber(in, path);
    height = pnmNumber(in, path);
    long const maxValue = pnmNumber(in, path);
    if (maxValue != 255)
        throw std::runtime_error(path + ": only 8-bit PPM (maximum value 255) is supported");
    if (width < 1 || height < 1 || width > 16384 || height > 16384)
        throw std::runtime_error(path + ": image size must be 1..16384 per side");
    in.get();  // the single whitespace byte before the pixels
    std::vector<unsigned char> rgb(static_cast<size_t>(height * width * 3));
    in.read(reinterpret_cast<char*>(rgb.data()), static_cast<std::streamsize>(rgb.size()));
    if (in.gcount() != static_cast<std::streamsize>(rgb.size()))
        throw std::runtime_error(path + " is truncated");
    size_t const plane = static_cast<size_t>(height * width);
    std::vector<float> chw(3 * plane);
    for (size_t p = 0; p < plane; ++p)
        for (size_t c = 0; c < 3; ++c)
            chw[c * plane + p] = rgb[3 * p + c];
    return chw;
}

// Writes a PGM (P5) to `path` through a temporary file, so a failure keeps any previous file.
void writePgm(std::string const& path, std::vector<unsigned char> const& pixels, int64_t height, int64_t width)
{
    std::string const temporary = path + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out << "P5\n" << width << " " << height << "\n255\n";
        out.write(reinterpret_cast<char const*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
        if (!out.flush())
            throw std::runtime_error("cannot write " + temporary);
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
        std::remove(temporary.c_str());
        throw std::runtime_error("cannot rename " + temporary + " to " + path);
    }
}

// The strings of a JSON list of strings such as ["background", "disc"] (convcrf.classes);
// names with escapes are not expected there.
std::vector<std::string> jsonStrings(std::string const& text)
{
    std::vector<std::string> out;
    size_t pos = 0;
    while ((pos = text.find('"', pos)) != std::string::npos) {
        size_t const end = text.find('"', pos + 1);
        if (end == std::string::npos)
            break;
        out.push_back(text.substr(pos + 1, end - pos - 1));
        pos = end + 1;
    }
    return out;
}

std::vector<std::string> classNames(Ort::Session& session)
{
    Ort::AllocatorWithDefaultOptions allocator;
    Ort::ModelMetadata metadata = session.GetModelMetadata();
    Ort::AllocatedStringPtr classes = metadata.LookupCustomMetadataMapAllocated("convcrf.classes", allocator);
    return classes ? jsonStrings(classes.get()) : std::vector<std::string>{};
}

int run(Options const& options)
{
    int64_t height = 0, width = 0;
    std::vector<float> image = readPpm(options.image, height, width);

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "convcrf_segment_ort");
    Ort::SessionOptions sessionOptions;
    if (options.threads > 0) {
        sessionOptions.SetIntraOpNumThreads(options.threads);
        // The CRF ops run on libconvcrf_cpu's own workers; read when the library registers.
        sessionOptions.AddConfigEntry("convcrf.num_threads", std::to_string(options.threads).c_str());
    }
    // The one line a plugin-flavour model needs: register the ConvCRF custom ops.
    sessionOptions.RegisterCustomOpsLibrary(options.ops.c_str());
    Ort::Session session(env, options.model.c_str(), sessionOptions);

    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<int64_t> const shape{1, 3, height, width};
    Ort::Value input = Ort::Value::CreateTensor<float>(memory, image.data(), image.size(), shape.data(),
                                                       shape.size());
    char const* inputNames[] = {"image"};
    char const* outputNames[] = {"labels"};
    std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, inputNames, &input, 1, outputNames, 1);

    auto info = outputs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ||
        info.GetShape() != std::vector<int64_t>{1, height, width})
        throw std::runtime_error(options.model + ": output 'labels' is not int64 [1, H, W]; was it exported "
                                                 "by convcrf-export?");
    int64_t const* labels = outputs[0].GetTensorData<int64_t>();
    size_t const pixels = static_cast<size_t>(height * width);

    std::map<int64_t, size_t> histogram;
    std::vector<unsigned char> bytes(pixels);
    for (size_t p = 0; p < pixels; ++p) {
        ++histogram[labels[p]];
        bytes[p] = static_cast<unsigned char>(std::min<int64_t>(std::max<int64_t>(labels[p], 0), 255));
    }
    std::vector<std::string> const names = classNames(session);
    std::cout << "labels of " << options.image << " (" << width << "x" << height << "):\n";
    for (auto const& [label, count] : histogram) {
        std::string const name = label >= 0 && label < static_cast<int64_t>(names.size()) ? names[label] : "?";
        std::cout << "  class " << label << " " << name << ": " << count << " pixels\n";
    }
    if (!options.labels.empty()) {
        if (!histogram.empty() && (histogram.begin()->first < 0 || histogram.rbegin()->first > 255))
            throw std::runtime_error("class indices outside 0..255 do not fit a PGM; use fewer classes");
        writePgm(options.labels, bytes, height, width);
        std::cout << "wrote " << options.labels << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv)
{
    try {
        return run(parse(argc, argv));
    } catch (Ort::Exception const& e) {
        std::string message = e.what();
        if (message.find("trt.plugins") != std::string::npos || message.find("ConvCRF") != std::string::npos)
            message += " (is --ops the ConvCRF custom-op library, libconvcrf_ort_ops?)";
        std::cerr << "error: ONNX Runtime: " << message << "\n";
    } catch (std::exception const& e) {
        std::cerr << "error: " << e.what() << "\n";
    }
    return 1;
}
