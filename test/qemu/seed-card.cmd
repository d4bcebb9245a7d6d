# A stand-in for the seed system's recovery card (DESIGN §3.5, seed compatibility), for the
# QEMU tests of layout `seed`. It behaves as that card does, as runner-agent/src/layouts/seed.ts
# reads it:
#   - fetch ${ethaddr}/rpi_image_part_0, _1, … (the MAC with ':') until one is missing;
#   - write part 0 without its first 4 MiB (the image's partition table: the card keeps its own)
#     and every later part whole, one after the other, from card block ${seed_card_blk};
#   - upload with tftpput a 4-byte file OK or FAILED into the same folder, holding the number of
#     bytes written to the card, little-endian (mw.l stores the CPU's order: aarch64 is LE).
# Without part 0 it writes nothing and reports nothing (the real card then boots its system).
#
# Needs a U-Boot with tftpput (bash scripts/build-test-uboot.sh --variant tftpput) and the env:
#   loadaddr          where parts are downloaded
#   seed_card_blk     card block (hex) where image byte 4 MiB lands — the card's own layout
#   seed_report_addr  4 bytes of RAM for the count
# and, for tests only (the real card has no such thing):
#   seed_test_count_offset  hex added to the count before it is reported, so a test can make
#                           the card report OK with a wrong count (the agent's VERIFY_MISMATCH)
# Hush in U-Boot 2023.01 has no `break`: a state variable stops the loop instead.

echo "seed-card: looking for ${ethaddr}/rpi_image_part_0"
mmc dev 0
setenv seed_count 0
setenv seed_blk ${seed_card_blk}
setenv seed_state go
for part in 0 1 2 3 4 5 6 7 8 9; do
  if test "${seed_state}" = go; then
    setenv filesize 0
    if tftpboot ${loadaddr} ${ethaddr}/rpi_image_part_${part}; then
      if test "${part}" = 0; then
        setexpr seed_src ${loadaddr} + 400000
        setexpr seed_len ${filesize} - 400000
      else
        setenv seed_src ${loadaddr}
        setenv seed_len ${filesize}
      fi
      setexpr seed_blocks ${seed_len} + 1ff
      setexpr seed_blocks ${seed_blocks} / 200
      if mmc write ${seed_src} ${seed_blk} ${seed_blocks}; then
        setexpr seed_blk ${seed_blk} + ${seed_blocks}
        setexpr seed_count ${seed_count} + ${seed_len}
        echo "seed-card: wrote part ${part}"
      else
        echo "seed-card: writing part ${part} failed"
        setenv seed_state failed
      fi
    else
      if test "${part}" = 0; then
        setenv seed_state none
      else
        setenv seed_state done
      fi
    fi
  fi
done

if test "${seed_state}" = none; then
  echo "seed-card: no image for this board"
else
  if test "${seed_state}" = failed; then
    setenv seed_result FAILED
  else
    setenv seed_result OK
  fi
  if test -n "${seed_test_count_offset}"; then
    setexpr seed_count ${seed_count} + ${seed_test_count_offset}
    echo "seed-card: test only: count raised by 0x${seed_test_count_offset}"
  fi
  mw.l ${seed_report_addr} ${seed_count}
  if tftpput ${seed_report_addr} 4 ${ethaddr}/${seed_result}; then
    echo "seed-card: reported ${seed_result} 0x${seed_count}"
  else
    echo "seed-card: could not upload ${seed_result}"
  fi
fi
echo "seed-card: done"
