# rpi-flash stage 1 (minimal): runs from the recovery partition on every boot.
# Fetch this board's job script <macdir>/flash.scr from the TFTP server and run it; without one,
# say so and stop. (DHCP and booting the installed OS come later: boards issue.)
#
# <macdir> is the MAC in lower case with '-' (DESIGN §3.4). U-Boot 2023.01's
# `setexpr <name> gsub` stores the result in <name> (and prints "<name>=<value>").
setexpr macdir gsub : - ${ethaddr}
if tftpboot ${scriptaddr} ${macdir}/flash.scr; then
	source ${scriptaddr}
else
	echo "rpi-flash: no job for ${macdir}: ${macdir}/flash.scr not found on ${serverip}"
fi
