#pragma once
#include <cstddef>
#include <cstdint>

void fuzz_worker_init();
void fuzz_worker_one(const std::uint8_t* data, std::size_t size);
