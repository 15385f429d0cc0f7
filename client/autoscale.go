package client

import (
	"fmt"
	"math"
)

// AutoscalingConfig is Ray Serve's autoscaling_config: the controller keeps
// the replica count between MinReplicas and MaxReplicas so that each
// replica has about TargetOngoingRequests requests (running plus queued at
// the callers), holding a decision for the delay before acting on it.
type AutoscalingConfig struct {
	// MinReplicas; 0 allows scaling to zero. Default: 1.
	MinReplicas *int `json:"min_replicas,omitempty"`
	// MaxReplicas. Default: 1 (100 with num_replicas: auto).
	MaxReplicas int `json:"max_replicas,omitempty"`
	// InitialReplicas at deploy. Default: MinReplicas.
	InitialReplicas *int `json:"initial_replicas,omitempty"`
	// TargetOngoingRequests per replica. Default: 2.
	TargetOngoingRequests float64 `json:"target_ongoing_requests,omitempty"`
	// UpscaleDelayS a decision to add replicas must hold. Default: 30.
	UpscaleDelayS *float64 `json:"upscale_delay_s,omitempty"`
	// DownscaleDelayS a decision to remove replicas must hold. Default: 600.
	DownscaleDelayS *float64 `json:"downscale_delay_s,omitempty"`
	// DownscaleToZeroDelayS a decision to go from 1 to 0 must hold. Default: DownscaleDelayS.
	DownscaleToZeroDelayS *float64 `json:"downscale_to_zero_delay_s,omitempty"`
	// LookBackPeriodS is the window load is averaged over. Default: 30.
	LookBackPeriodS float64 `json:"look_back_period_s,omitempty"`
	// UpscalingFactor scales each upscaling step. Default: 1.
	UpscalingFactor float64 `json:"upscaling_factor,omitempty"`
	// DownscalingFactor scales each downscaling step. Default: 1.
	DownscalingFactor float64 `json:"downscaling_factor,omitempty"`
}

// AutoDefaults is what num_replicas: auto means (Ray Serve's defaults for it).
func AutoDefaults() *AutoscalingConfig {
	one := 1
	return &AutoscalingConfig{MinReplicas: &one, MaxReplicas: 100, TargetOngoingRequests: 2}
}

func fptr(v float64) *float64 { return &v }

// Normalize fills Ray Serve's defaults and validates; errors name the field.
func (a *AutoscalingConfig) Normalize() error {
	if a.MinReplicas == nil {
		one := 1
		a.MinReplicas = &one
	}
	if a.MaxReplicas == 0 {
		a.MaxReplicas = max(1, *a.MinReplicas)
	}
	if a.InitialReplicas == nil {
		v := *a.MinReplicas
		a.InitialReplicas = &v
	}
	if a.TargetOngoingRequests == 0 {
		a.TargetOngoingRequests = 2
	}
	if a.UpscaleDelayS == nil {
		a.UpscaleDelayS = fptr(30)
	}
	if a.DownscaleDelayS == nil {
		a.DownscaleDelayS = fptr(600)
	}
	if a.DownscaleToZeroDelayS == nil {
		a.DownscaleToZeroDelayS = fptr(*a.DownscaleDelayS)
	}
	if a.LookBackPeriodS == 0 {
		a.LookBackPeriodS = 30
	}
	if a.UpscalingFactor == 0 {
		a.UpscalingFactor = 1
	}
	if a.DownscalingFactor == 0 {
		a.DownscalingFactor = 1
	}
	switch {
	case *a.MinReplicas < 0:
		return fmt.Errorf("min_replicas %d is negative", *a.MinReplicas)
	case a.MaxReplicas > MaxNumReplicas:
		return fmt.Errorf("max_replicas %d is more than %d", a.MaxReplicas, MaxNumReplicas)
	case a.MaxReplicas < *a.MinReplicas || a.MaxReplicas < 1:
		return fmt.Errorf("max_replicas %d must be at least 1 and at least min_replicas %d", a.MaxReplicas, *a.MinReplicas)
	case *a.InitialReplicas < *a.MinReplicas || *a.InitialReplicas > a.MaxReplicas:
		return fmt.Errorf("initial_replicas %d is outside [min_replicas, max_replicas]", *a.InitialReplicas)
	case a.TargetOngoingRequests <= 0:
		return fmt.Errorf("target_ongoing_requests %v must be positive", a.TargetOngoingRequests)
	case *a.UpscaleDelayS < 0 || *a.DownscaleDelayS < 0 || *a.DownscaleToZeroDelayS < 0:
		return fmt.Errorf("upscale_delay_s, downscale_delay_s and downscale_to_zero_delay_s must not be negative")
	case a.LookBackPeriodS <= 0:
		return fmt.Errorf("look_back_period_s %v must be positive", a.LookBackPeriodS)
	case a.UpscalingFactor <= 0 || a.DownscalingFactor <= 0:
		return fmt.Errorf("upscaling_factor and downscaling_factor must be positive")
	}
	return nil
}

// DesiredReplicas is Ray Serve's default policy as a pure function: with
// running replicas carrying totalOngoing requests (running plus queued),
//
//	error_ratio = totalOngoing / (target_ongoing_requests × running)
//	desired     = ceil(running × (1 + (error_ratio − 1) × factor))
//
// where factor is the upscaling factor when error_ratio ≥ 1 and the
// downscaling factor otherwise, clamped to [min_replicas, max_replicas].
// With no replica running, any load asks for max(ceil(upscaling_factor), 1).
// Scaling to zero only happens from one replica, as in Ray Serve.
func DesiredReplicas(a *AutoscalingConfig, running int, totalOngoing float64) int {
	minR, maxR := *a.MinReplicas, a.MaxReplicas
	clamp := func(n int) int { return min(max(n, minR), maxR) }
	if running == 0 {
		if totalOngoing > 0 {
			return clamp(max(int(math.Ceil(a.UpscalingFactor)), 1))
		}
		return clamp(0)
	}
	ratio := totalOngoing / (a.TargetOngoingRequests * float64(running))
	factor := a.DownscalingFactor
	if ratio >= 1 {
		factor = a.UpscalingFactor
	}
	desired := int(math.Ceil(float64(running) * (1 + (ratio-1)*factor)))
	if desired < 1 && running > 1 {
		desired = 1 // to zero only from one replica
	}
	return clamp(desired)
}

// Decision holds a scaling decision for its delay before it is acted on.
type Decision struct {
	// Want is the replica count being held, Since when it was first seen.
	Want  int
	Since float64 // seconds, on the caller's clock
}

// Hold returns the replica count to act on now: current until desired has
// been wanted (in the same direction) for the delay, then desired.
func (d *Decision) Hold(a *AutoscalingConfig, current, desired int, now float64) int {
	if desired == current {
		d.Want, d.Since = current, now
		return current
	}
	up := desired > current
	if d.Want == current || (d.Want > current) != up {
		d.Want, d.Since = desired, now
	}
	d.Want = desired
	delay := *a.DownscaleDelayS
	switch {
	case up:
		delay = *a.UpscaleDelayS
		if current == 0 {
			delay = 0 // scale from zero at once
		}
	case desired == 0:
		delay = *a.DownscaleToZeroDelayS
	}
	if now-d.Since >= delay {
		return desired
	}
	return current
}
