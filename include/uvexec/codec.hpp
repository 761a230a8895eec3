// uvexec — what crosses the process boundary: cereal binary archives.
//
// Arguments, results and exceptions of process-pool calls are written with
// cereal's BinaryOutputArchive. Arithmetic types, std::string, vector, array,
// deque, list, map, unordered_map, set, unordered_set, optional, variant,
// tuple, pair, chrono durations and bitset work out of the box (their cereal
// headers are included here); a type of your own needs a cereal `serialize`
// (or save/load) function. A type that has none is a compile-time error that
// names it (see uvexec::serializable). Both sides rebuild a value by
// default-constructing it and loading it; a type without a default
// constructor crosses as a std::unique_ptr<T> with cereal's load_and_construct.
#pragma once

#include "uvexec/detail/config.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include "uvexec/detail/frame.hpp"
#include "uvexec/error.hpp"

namespace uvexec::inline v0::detail {

/// cereal's binary input archive with one difference: a length read from the
/// bytes (a string's, a vector's, ...) may not exceed the bytes left, since
/// every element takes at least one byte. Corrupt input therefore cannot make
/// a reader allocate more than a small multiple of what it received.
class bounded_input_archive
    : public cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision> {
public:
    explicit bounded_input_archive(std::string_view bytes)
        : cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision>(this), bytes_(bytes) {}

    void loadBinary(void* data, std::streamsize size) {
        auto n = static_cast<std::size_t>(size);
        if (n == 0) return;  // an empty vector's data() may be null, which memcpy may not get
        std::memcpy(data, take(n).data(), n);
    }
    std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
    /// The next n bytes where they lie (throws if fewer are left).
    std::string_view take(std::size_t n) {
        if (n > bytes_.size() - pos_)
            throw cereal::Exception("truncated: " + std::to_string(n) + " bytes wanted, " +
                                    std::to_string(bytes_.size() - pos_) + " left");
        auto v = bytes_.substr(pos_, n);
        pos_ += n;
        return v;
    }

private:
    std::string_view bytes_;
    std::size_t pos_ = 0;
};

template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, T& t) {
    ar.loadBinary(std::addressof(t), sizeof(t));
}

/// A bool is one byte, 0 or 1: reading any other byte into a bool would give
/// it an undefined value (std::optional's flag, say), so it is refused.
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, bool& b) {
    unsigned char v = 0;
    ar.loadBinary(&v, 1);
    if (v > 1) throw cereal::Exception("a bool stored as " + std::to_string(v) + " (0 or 1 expected)");
    b = v != 0;
}

template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::NameValuePair<T>& t) {
    ar(t.value);
}

template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
    if (static_cast<std::uint64_t>(t.size) > ar.remaining())
        throw cereal::Exception("a length of " + std::to_string(static_cast<std::uint64_t>(t.size)) +
                                " exceeds the " + std::to_string(ar.remaining()) + " bytes left");
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::BinaryData<T>& bd) {
    ar.loadBinary(bd.data, static_cast<std::streamsize>(bd.size));
}

/// A std::string is read with one copy into memory reserved for it (advised
/// huge pages when large), where cereal's own load zero-fills it first: the
/// common large payload's first touch is its only one.
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, std::string& str) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    std::string_view bytes = ar.take(static_cast<std::size_t>(size));
    str.clear();
    reserve_large(str, bytes.size());
    str.append(bytes);
}

/// A vector of numbers likewise (its length is checked against the bytes
/// left before anything is allocated).
template <class T, class A>
inline std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>
CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, std::vector<T, A>& vec) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    const auto n = static_cast<std::size_t>(size);
    if (n > ar.remaining() / sizeof(T))
        throw cereal::Exception("a vector of " + std::to_string(n) + " elements exceeds the " +
                                std::to_string(ar.remaining()) + " bytes left");
    std::string_view bytes = ar.take(n * sizeof(T));
    vec.clear();
    if (n > vec.capacity()) {
        vec.reserve(n);
        advise_huge_pages(vec.data(), vec.capacity() * sizeof(T));
    }
    vec.resize(n);
    if (n > 0) std::memcpy(vec.data(), bytes.data(), bytes.size());
}

}  // namespace uvexec::detail

CEREAL_REGISTER_ARCHIVE(uvexec::detail::bounded_input_archive)
// Pairs our input archive with cereal's binary output archive for cereal's
// save/load checks (one direction only: BinaryOutputArchive keeps its own).
namespace cereal::traits::detail {
template <>
struct get_output_from_input<uvexec::detail::bounded_input_archive> {
    using type = cereal::BinaryOutputArchive;
};
}  // namespace cereal::traits::detail

namespace uvexec::inline v0 {

/// True when T can be written to and read from a cereal binary archive.
template <class T>
inline constexpr bool serializable_v =
    std::is_void_v<T> || (cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
                          cereal::traits::is_input_serializable<T, detail::bounded_input_archive>::value);

/// Fails to compile, naming T, when T cannot be rebuilt on the other side: a
/// worker (for an argument) or the parent (for a result) default-constructs
/// it, then loads it.
template <class T>
struct require_default_constructible {
    static_assert(std::is_void_v<T> || std::is_default_constructible_v<T>,
                  "uvexec: a process-pool call's arguments and result are rebuilt on the other side by "
                  "default-constructing them and loading them with cereal, so this type needs a public default "
                  "constructor. For a type without one, send a std::unique_ptr<T> and give T cereal's "
                  "load_and_construct. The type is the T of require_default_constructible<T> in this message.");
    static constexpr bool value = true;
};

/// Fails to compile, naming T, when T cannot cross to a worker process.
template <class T>
struct require_serializable {
    static_assert(serializable_v<T>,
                  "uvexec: this type cannot be sent to or from a worker process. Give it a cereal "
                  "serialize(Archive&) member or free function (or save/load), or include the cereal "
                  "header for it. The type is the T of require_serializable<T> in this message.");
    static constexpr bool value = true;
};

namespace detail {

/// An output streambuf appending to a std::string (no ostringstream copy).
class string_sink final : public std::streambuf {
public:
    explicit string_sink(std::string& s) : s_(s) {}

protected:
    std::streamsize xsputn(const char* p, std::streamsize n) override {
        s_.append(p, static_cast<std::size_t>(n));
        return n;
    }
    int_type overflow(int_type c) override {
        if (c != traits_type::eof()) s_.push_back(static_cast<char>(c));
        return c;
    }

private:
    std::string& s_;
};

template <class T>
struct is_std_vector : std::false_type {};
template <class T, class A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};

/// The bytes cereal's binary archive of v takes, when that is cheap to know
/// (arithmetic values, std::string, std::vector of arithmetic values); 0
/// otherwise. Only a hint: the frame is reserved with it, so that a large
/// argument or result is encoded into its frame without regrowing it.
template <class T>
std::size_t encoded_size_hint(const T& v) noexcept {
    if constexpr (std::is_arithmetic_v<T>) {
        return sizeof(T);
    } else if constexpr (std::is_same_v<T, std::string>) {
        return sizeof(std::uint64_t) + v.size();
    } else if constexpr (is_std_vector<T>::value) {
        if constexpr (std::is_arithmetic_v<typename T::value_type> && !std::is_same_v<typename T::value_type, bool>)
            return sizeof(std::uint64_t) + v.size() * sizeof(typename T::value_type);
        else
            return 0;
    } else {
        return 0;
    }
}

/// Appends the archive of values to out.
template <class... T>
void encode_into(std::string& out, const T&... values) {
    string_sink sink(out);
    std::ostream os(&sink);
    cereal::BinaryOutputArchive ar(os);
    if constexpr (sizeof...(T) > 0) ar(values...);
}

/// Reads values from bytes; throws uvexec::error if the bytes do not hold them
/// (truncated or of other types).
template <class... T>
void decode_from(std::string_view bytes, T&... values) {
    bounded_input_archive ar(bytes);
    try {
        if constexpr (sizeof...(T) > 0) ar(values...);
    } catch (const cereal::Exception& e) {
        throw error(std::string("uvexec: cannot decode a process-pool message: ") + e.what());
    }
    if (ar.remaining() != 0)
        throw error("uvexec: cannot decode a process-pool message: " + std::to_string(ar.remaining()) +
                    " bytes left over (the two sides disagree on the types)");
}

}  // namespace detail
}  // namespace uvexec
